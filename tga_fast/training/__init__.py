"""TGA training: the alignment loss (imported by ``tga_fast``), configs, the Trainer, stages and the projector export.

Only the loss is imported here; the rest loads transformers and is imported from its module:
``tga_fast.training.config`` (``ModelConfig``, ``DataConfig``, ``TGAConfig``, ``TrainConfig``, ``parse_config``),
``tga_fast.training.trainer`` (``TGATrainer``), ``tga_fast.training.train`` (``train``, ``main``),
``tga_fast.training.stages`` (``load_model``, ``freeze_for_stage``), ``tga_fast.training.export``
(``export_projector``, ``load_projector``), ``tga_fast.training.data`` / ``collator`` (``TGADataset``,
``TGACollator``).
"""

from tga_fast.training.loss import AlignmentTerms, tga_alignment_loss

__all__ = ["AlignmentTerms", "tga_alignment_loss"]
