"""Train a GPT through the one loop (nanoGPT/train.py); the config or --variant= picks the objective.

python train.py config/train_sigmoid_shakespeare_char.py
torchrun --standalone --nproc_per_node=8 train.py config/train_bayes_wikitext.py
"""

from nanoGPT.train import main

if __name__ == "__main__":
    main()
