"""`python -m memjax`: the `memjax` command (memjax/launcher.py)."""

from memjax import launcher

if __name__ == "__main__":
  launcher.main()
