"""GLM-4.7-Flash (``Glm4MoeLite``): the MoE layer configuration, and an MoE layer built from it with
generated weights.

Configuration values, checked against public material: config.json files of ``glm4_moe_lite`` checkpoints
on the Hugging Face Hub derived from zai-org/GLM-4.7-Flash (huggingface.co/shieldstackllc/GLM-4.7-Flash-PRISM-
mlx-4bit/blob/main/config.json and huggingface.co/dphnAI/flash-beta1/blob/main/config.json: hidden_size 2048,
moe_intermediate_size 1536, n_routed_experts 64, num_experts_per_tok 4, n_shared_experts 1, n_group 1,
first_k_dense_replace 1, 47 layers; huggingface.co/naaviii/glm-code-next-4b/blob/main/config.json also lists
topk_group 1, norm_topk_prob true, routed_scaling_factor 1.8, scoring_func "sigmoid", topk_method
"noaux_tc"), and the Hugging Face transformers documentation of Glm4MoeLite
(huggingface.co/docs/transformers/main/model_doc/glm4_moe_lite). noaux_tc: the router carries an
``e_score_correction_bias`` used for expert selection only.

The router computes its logits in float32 (as the DeepSeek-V3-style router of transformers'
Glm4MoeLite does); the shared expert is a SwiGLU MLP of intermediate size
``n_shared_experts * moe_intermediate_size`` added to the routed output with weight 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..moe.experts import PROJECTIONS, QuantizedExperts, normalize_recipe
from ..moe.layer import MoELayer
from ..moe.routing import RoutingConfig
from ..quantize import quantize


@dataclass(frozen=True)
class Glm4MoeLiteConfig:
    hidden_size: int = 2048
    moe_intermediate_size: int = 1536
    n_routed_experts: int = 64
    num_experts_per_tok: int = 4
    n_shared_experts: int = 1
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.8
    num_hidden_layers: int = 47
    first_k_dense_replace: int = 1

    def routing(self) -> RoutingConfig:
        return RoutingConfig(num_experts=self.n_routed_experts, top_k=self.num_experts_per_tok,
                             scoring=self.scoring_func, n_group=self.n_group, topk_group=self.topk_group,
                             norm_topk_prob=self.norm_topk_prob,
                             routed_scaling_factor=self.routed_scaling_factor)

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    def scaled(self, hidden_size: int, moe_intermediate_size: int, n_routed_experts: int | None = None
               ) -> "Glm4MoeLiteConfig":
        """The same routing at smaller dimensions (CPU runs and tests)."""
        return replace(self, hidden_size=hidden_size, moe_intermediate_size=moe_intermediate_size,
                       n_routed_experts=n_routed_experts or self.n_routed_experts)

    def to_dict(self) -> dict:
        return asdict(self)


def glm4_mixed_recipe(e: int):
    """The ``glm4`` mixed-width recipe, per routed expert (gate, up, down), group size 128:

    - 44 experts at int4/int4/int4 (the default),
    - 8 "cold" experts (e % 8 == 3) at int2/int2/int3,
    - 8 experts (e % 8 == 5) at int3/int3/int4,
    - 4 "hot" outlier experts (e % 16 == 7) at int8/int8/int8;

    the shared expert (always active) at int8/int8/int8 (:data:`GLM4_SHARED_RECIPE`).
    """
    if e % 16 == 7:
        return ("int8", "int8", "int8")
    if e % 8 == 3:
        return ("int2", "int2", "int3")
    if e % 8 == 5:
        return ("int3", "int3", "int4")
    return ("int4", "int4", "int4")


GLM4_SHARED_RECIPE = ("int8", "int8", "int8")
GLM4_RECIPE_TEXT = ("glm4 recipe (gate/up/down, group 128): 44 experts int4/int4/int4, 8 (e%8==3) int2/int2/int3, "
                    "8 (e%8==5) int3/int3/int4, 4 (e%16==7) int8/int8/int8; shared expert int8/int8/int8")


def build_glm4_moe_lite_layer(config: Glm4MoeLiteConfig | None = None, recipe="int4", shared_recipe=None, *,
                              group_size: int | None = 128, seed: int = 0, device="cpu",
                              strategy: str = "fast_mixed", weight_std: float = 0.02) -> MoELayer:
    """One GLM-4.7-Flash MoE layer with generated weights (normal, std ``weight_std``), quantized by
    ``recipe`` (any :func:`triton_marlin.moe.experts.normalize_recipe` form, or ``"glm4"`` for
    :func:`glm4_mixed_recipe`). Weights are generated and quantized expert by expert on ``device``.

    ``group_size`` applies to formats given without one (None: each format's default).
    """
    cfg = config or Glm4MoeLiteConfig()
    H, I, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts
    if recipe == "glm4":
        recipe, shared_recipe = glm4_mixed_recipe, (shared_recipe or GLM4_SHARED_RECIPE)
    specs = normalize_recipe(recipe, E)
    shared_specs = normalize_recipe(shared_recipe if shared_recipe is not None else [specs[0]], 1)[0]
    g = torch.Generator(device=device).manual_seed(seed)
    dev = torch.device(device)

    def gen(*shape):
        return torch.randn(*shape, generator=g, device=dev) * weight_std

    def quantized_expert(spec):
        shapes = {"gate": (I, H), "up": (I, H), "down": (H, I)}
        out = {}
        for p, (fmt, gs) in zip(PROJECTIONS, spec):
            if gs is None and group_size is not None and fmt not in ("mxfp4", "nvfp4", "fp8"):
                K = shapes[p][1]
                gs = group_size if K % group_size == 0 else -1
            out[p] = quantize(gen(*shapes[p]), fmt, gs)
        return out

    experts = [quantized_expert(specs[e]) for e in range(E)]
    experts += [quantized_expert(shared_specs) for _ in range(cfg.n_shared_experts)]
    qexperts = QuantizedExperts(experts, H, I, num_shared=cfg.n_shared_experts)
    router = gen(E, H)
    bias = (torch.rand(E, generator=g, device=dev) - 0.5) * 0.02 if cfg.topk_method == "noaux_tc" else None
    return MoELayer(router, cfg.routing(), qexperts, correction_bias=bias, strategy=strategy)
