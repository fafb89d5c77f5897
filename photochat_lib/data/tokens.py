"""Special tokens that turn a multimodal dialogue into one text sequence (paper §2.2).

A shared photo in a *response* becomes ``[IMG] caption [/IMG]`` in the target text; a photo in the
*context* becomes ``NUM_VISUAL_TOKENS`` copies of the placeholder ``<image>``, whose embeddings the
model replaces by the image perceptron's 32 visual tokens (eq. 3).
"""
IMG_START = "[IMG]"          # opens a caption the LLM writes for a photo it shares (§2.2)
IMG_END = "[/IMG]"           # closes it; the text in between goes to the image generator
IMAGE_PLACEHOLDER = "<image>"  # one slot of a context photo; replaced by a visual token embedding
NUM_VISUAL_TOKENS = 32       # Q-Former queries = visual tokens per photo (§2.3)
SPECIAL_TOKENS = [IMG_START, IMG_END, IMAGE_PLACEHOLDER]
IGNORE_INDEX = -100          # label value never scored by the text loss (eq. 2)
