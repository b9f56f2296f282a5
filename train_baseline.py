"""Train a GPT with the 'baseline' output objective through the one loop (nanoGPT/train.py)."""

from nanoGPT.train import main

if __name__ == "__main__":
    main("baseline")
