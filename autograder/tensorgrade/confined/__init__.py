"""Code that runs confined, next to the student's cells: never imports the judge or root code."""
