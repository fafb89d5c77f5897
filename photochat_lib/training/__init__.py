"""Training: `train` (the `Trainer` and `photochat train`), what trains and how (`finetune`: freezing and
LoRA), its run folder (`run_folder`: checkpoints, resume, final/), dev evaluation and early stopping
(`dev_eval`), a checkpoint as a model (`checkpoints`) and the GPU budget (`memory`, `steptime`)."""
