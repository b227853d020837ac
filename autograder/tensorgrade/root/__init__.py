"""The only code that keeps root: the zygote (starts, kills and cleans up sandboxes) and uids."""
