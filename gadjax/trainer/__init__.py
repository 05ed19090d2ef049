"""Pieces of the training loop that gadjax/train.py wires together (build, guards, FLOP accounting)."""
