"""Train a GPT with the 'distill' output objective through the one loop (nanoGPT/train.py)."""

from nanoGPT.train import main

if __name__ == "__main__":
    main("distill")
