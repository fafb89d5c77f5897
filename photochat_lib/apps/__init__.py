"""The apps on top of the library: the `photochat` command line (`cli`), its `chat`, `demo` and `pretrain`
commands (the other commands live beside what they run: `data.cli`, `training.train`, `evaluation.evaluate`,
`training.memory`, `utils.doctor`)."""
