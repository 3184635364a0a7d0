"""The trainer's model-card hooks: the hf-nc card of a PEFT adapter instead of PEFT's blank one.

:class:`NCModelCardMixin` goes before :class:`transformers.Trainer` in a subclass's bases
(``class NCTrainer(NCModelCardMixin, Trainer)``); its ``super()`` calls then reach the Trainer.
It reads only what every Trainer has (``accelerator``, ``args``, ``state``, ``hub_model_id``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..backbones import resolve_backbone

logger = logging.getLogger(__name__)


class NCModelCardMixin:
    """``save_model()``, ``create_model_card()`` and ``push_to_hub()`` write the hf-nc card of a PEFT model.

    The card (:func:`hf_nc.cards.adapter_card_from_model`) names the base model, the method and its
    settings, the trainable share, and the accuracy and NC of the last evaluation as model-index
    results, with the ``import hf_nc`` loading snippet. Models that are not PEFT models keep
    transformers' own card.
    """

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; a final save of a PEFT model also writes the hf-nc card as ``README.md``.

        Only a final save writes the card, not the checkpoints saved during training (``_internal_call``).
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        if not _internal_call and self.args.should_save:
            try:
                self._write_nc_card(output_dir or self.args.output_dir, quiet=True)
            except Exception as e:  # noqa: BLE001 - a card must never cost the user the saved model
                logger.warning("the model was saved, but its hf-nc card could not be written: %s", e)

    def nc_card_metrics(self) -> dict[str, float]:
        """The metrics of the last evaluation in ``state.log_history`` (every eval set's and the train
        subset's), as :mod:`hf_nc.cards` reads them (``eval_`` -> the eval split,
        ``eval_train_subset_`` -> ``train``); the last training loss too."""
        out: dict[str, float] = {}
        for entry in self.state.log_history:
            if any(k.startswith("eval_") for k in entry):
                out.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        return out

    def _write_nc_card(self, folder: str, model_name=None, finetuned_from=None, dataset=None, license=None,
                       tags=None, eval_split: str = "validation", quiet: bool = False) -> bool:
        """Writes the hf-nc card of a PEFT model to ``folder/README.md``.

        Args:
            folder: Where ``README.md`` goes (created if needed).
            quiet: Say nothing when the base model is not known (a plain ``save_model()``, where
                the card is a bonus; ``create_model_card()`` warns instead).
            Others: as :meth:`create_model_card`.

        Returns:
            ``False`` when there is no hf-nc card to write (not a PEFT model, or no base model id
            is known), so the caller can fall back to transformers' card.
        """
        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "peft_config"):
            return False
        from ..cards import adapter_card_from_model  # lazily: cards pulls in huggingface_hub and jinja2

        config = next(iter(model.peft_config.values()))
        base = finetuned_from or config.base_model_name_or_path or getattr(resolve_backbone(model).model.config, "_name_or_path", None)
        if not base:
            if quiet:
                return False
            logger.warning("no hf-nc card: the base model is not known (pass finetuned_from=<hub id>); "
                           "falling back to transformers' card")
            return False
        card = adapter_card_from_model(
            model, base_model=base, metrics=self.nc_card_metrics(),
            dataset=dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset,
            adapter_name=next(iter(model.peft_config)), repo_id=self.hub_model_id, model_name=model_name,
            license=license, tags=[tags] if isinstance(tags, str) else list(tags or []), eval_split=eval_split)
        os.makedirs(folder, exist_ok=True)
        card.save(os.path.join(folder, "README.md"))
        return True

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None,
                          eval_split: str = "validation") -> None:
        """Writes ``output_dir/README.md``: for a PEFT model (hf-nc's methods, LoRA, ...) the hf-nc card
        (:func:`hf_nc.cards.adapter_card_from_model`: base model, method and settings, trainable share,
        accuracy and NC of the last evaluation as model-index results -- the eval data as
        ``eval_split``, the train subset as ``train`` -- and the ``import hf_nc`` loading snippet),
        instead of PEFT's blank template; for other models transformers' own card.
        ``trainer.push_to_hub(**kwargs)`` calls it with its keyword arguments.

        Args:
            eval_split: The split the evaluation data is (``"validation"``: the Trainer's eval set is
                the one models are selected on; pass ``"test"`` if it is the test split).
            finetuned_from: The base model's Hub id (default: the adapter config's
                ``base_model_name_or_path``, else the base config's ``_name_or_path``).
            dataset: The fine-tuning dataset (a Hub id, or an hf-nc built-in name).
            Others: as :meth:`transformers.Trainer.create_model_card`.
        """
        if not self.is_world_process_zero():
            return
        if self._write_nc_card(self.args.output_dir, model_name=model_name, finetuned_from=finetuned_from,
                               dataset=dataset, license=license, tags=tags, eval_split=eval_split):
            return
        super().create_model_card(language=language, license=license, tags=tags, model_name=model_name,
                                  finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags,
                                  dataset=dataset, dataset_args=dataset_args)
