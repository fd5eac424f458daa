"""Files shipped inside the installed package: `configs/` (the checkout's top-level configs/, mapped here by
setup.py's package_dir), so `--config=configs/<name>.py` works after `pip install` outside a checkout."""
