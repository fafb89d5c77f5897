"""The toy world's stand-ins for the pretrained foundation models (Llama-2-chat, BLIP-2, Stable Diffusion),
which nothing here may download: their tokenizers (`tokenizers`), architectures and shipped checkpoints
(`foundation`, ``checkpoints/``), their pretraining (`pretrain_llm` on `corpus`, `pretrain_perceptron`,
`pretrain_sd`) and the toy judge that stands in for Inception and a caption model (`classifier`)."""
