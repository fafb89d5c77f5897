"""The `photochat` command line (`cli`) and its `chat`, `demo` and `pretrain` commands."""
