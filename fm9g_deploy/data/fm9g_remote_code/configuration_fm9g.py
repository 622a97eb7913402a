"""FM9G's config for transformers (remote code shipped with fm9g-deploy's generated tiny models).

FM9G is Llama's layout with MiniCPM's three scales; the real checkpoints ship their own remote
code, this is the stand-in that lets the guide's transformers way load the tiny models.
"""

from transformers import LlamaConfig


class FM9GConfig(LlamaConfig):
    model_type = "fm9g"

    def __init__(self, scale_emb=1.0, scale_depth=1.0, dim_model_base=None, **kwargs):
        self.scale_emb = scale_emb
        self.scale_depth = scale_depth
        self.dim_model_base = dim_model_base
        super().__init__(**kwargs)
        if self.dim_model_base is None:
            self.dim_model_base = self.hidden_size
