"""Training (§2.5, §3.1.2): `train` (the `Trainer`), `finetune` (freezing, LoRA), `run_folder`, `dev_eval`
(early stopping), `checkpoints` (a checkpoint as a model), and the GPU budget (`memory`, `steptime`, joined by `budget`: photochat estimate-memory)."""
