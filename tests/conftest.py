import os
os.environ.setdefault("STRUCTLOSS_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
