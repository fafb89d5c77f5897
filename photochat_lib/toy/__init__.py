"""Stand-ins for the pretrained models nothing here may download (Llama-2-chat, BLIP-2, SD): `tokenizers`,
`foundation` (architectures, shipped ``checkpoints/``), their pretraining and the toy judge (`classifier`)."""
