"""The paper's model, one module per component (§2):

* `data.tokens` (in the data layer) — the special tokens that turn a dialogue into text (§2.2);
* `image_perceptron` — ViT + Q-Former + projection: photos in, visual tokens out (eq. 3);
* `text_generator` — the LLM, its visual-token splice and the text loss Lt (eqs. 1-2, 4);
* `stgs` — the straight-through Gumbel-softmax (eqs. 5-8);
* `dvtm` — the dynamic vocabulary transformation matrix (eqs. 9-11);
* `image_generator` — Stable Diffusion on one-hot captions and the image loss Lv (eq. 12);
* `photochat_model` — the whole model and L = Lt + αLv (eq. 13);
* `generation` — inference: text and photos for a dialogue context; `sampling` — the sampler defaults;
* `hub` — where a model folder comes from (local, Hub) and goes (a model card, the upload).
"""
