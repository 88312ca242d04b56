"""``tga-fast build-lvlm``: the paper's starting point (a base LLM + a CLIP/SigLIP tower + a fresh projector) as a
Hugging Face LLaVA folder whose chat template keeps content order (:func:`tga_fast.models.build.build_lvlm`)."""

from __future__ import annotations

import argparse


def _build(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tga_fast.models.build import BUILD_RECORD, build_lvlm

    build_lvlm(
        args.llm, args.vision, args.out, projector=args.projector, vision_layer=args.vision_layer,
        image_tokens=args.image_tokens, anyres=args.anyres, seed=args.seed, image_token=args.image_token,
        chat_template=args.chat_template, dtype=args.dtype, overwrite=args.overwrite,
    )  # fmt: skip
    print(json.dumps(json.loads((Path(args.out) / BUILD_RECORD).read_text()), indent=1))
    return 0


def add_build_lvlm(commands) -> None:
    build = commands.add_parser(
        "build-lvlm",
        help="assemble a LLaVA folder from a base LLM folder and a CLIP/SigLIP folder with a fresh projector",
        description="Assemble LlavaForConditionalGeneration (LlavaNextForConditionalGeneration with --anyres) from a "
        "local causal-LM folder (Llama, Mistral, Qwen2) and a local CLIP or SigLIP folder: the LLM's and the "
        "tower's weights as they are, a freshly initialised projector (seeded), an image token added to the "
        "tokenizer and the embeddings, and the LLM's own chat template extended so that content order is kept "
        "('Retrieved Text: ... <image>\\n question'). The folder is the input of stage 1 (docs/training.md).",
    )
    add = build.add_argument
    add("--llm", required=True, help="local causal-LM folder (its tokenizer and chat template included)")
    add("--vision", required=True, help="local CLIP or SigLIP folder (the vision tower alone or the dual encoder)")
    add("--out", required=True, help="folder to write (save_pretrained layout, loadable by plain transformers)")
    add("--projector", choices=["mlp2x_gelu", "linear"], default="mlp2x_gelu",
        help="mlp2x_gelu: LLaVA-1.5's Linear-GELU-Linear (default); linear: LLaVA-1's linear map")
    add("--vision-layer", dest="vision_layer", type=int, default=-2,
        help="the tower's hidden_states index of the image features (default -2, the penultimate layer)")
    add("--image-tokens", dest="image_tokens", choices=["default", "full"], default="default",
        help="default: one token per patch (CLIP's class token dropped, as LLaVA-1.5); full: the class token kept")
    add("--anyres", action="store_true", help="LLaVA-NeXT: high-resolution images as tiles plus a downscaled view")
    add("--seed", type=int, default=0, help="the projector's initialisation (default 0)")
    add("--image-token", dest="image_token", default="<image>", help="the placeholder added to the tokenizer")
    add("--chat-template", dest="chat_template", default=None,
        help="a Jinja file to extend instead of the LLM's own template (needed when the LLM ships none: then "
        "LLaVA-1.5's 'USER: ... ASSISTANT:' format is used)")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
        help="the saved weights' dtype (auto: the LLM checkpoint's)")
    add("--overwrite", action="store_true", help="replace files already in --out")
    build.set_defaults(run=_build)
