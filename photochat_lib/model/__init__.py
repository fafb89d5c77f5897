"""The paper's model (§2), one module per component: `image_perceptron` (eq. 3), `text_generator` (eqs. 1-2),
`stgs` (eqs. 4-7), `dvtm` (eqs. 8-11), `image_generator` (eq. 12), `photochat_model` (eq. 13); inference
(`generation`, `sampling`) and model folders on disk and the Hub (`hub`)."""
