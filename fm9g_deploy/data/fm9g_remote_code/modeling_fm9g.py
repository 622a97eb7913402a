"""FM9G for transformers: Llama's modules with MiniCPM's scales applied to their outputs.

The scales, as upstream vLLM's MiniCPM and InfiniLM's FM9G apply them: embeddings times
scale_emb; the attention and MLP outputs (o_proj, down_proj) times
scale_depth / sqrt(num_hidden_layers) before each residual add; the head's input divided by
hidden_size / dim_model_base (the same as scaling its output, the head being linear).
"""

import math

from transformers import LlamaForCausalLM

from .configuration_fm9g import FM9GConfig


def _times(factor):
    def hook(module, inputs, output):
        return output * factor

    return hook


class FM9GForCausalLM(LlamaForCausalLM):
    config_class = FM9GConfig

    def __init__(self, config):
        super().__init__(config)
        residual = config.scale_depth / math.sqrt(config.num_hidden_layers)
        self.model.embed_tokens.register_forward_hook(_times(config.scale_emb))
        for layer in self.model.layers:
            layer.self_attn.o_proj.register_forward_hook(_times(residual))
            layer.mlp.down_proj.register_forward_hook(_times(residual))
        self.lm_head.register_forward_hook(_times(config.dim_model_base / config.hidden_size))
