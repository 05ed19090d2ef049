"""The training loop and its parts: loop.py (Trainer.run), steps.py (one step per stage), state.py
(train states, resume, save, export), build.py, guards.py, flops.py, evaluation.py, preemption.py,
rewards.py. The command line is gadjax/train.py."""
