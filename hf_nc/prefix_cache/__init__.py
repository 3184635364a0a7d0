"""Frozen-prefix cache: run the frozen blocks once per training image, train from the first tuned one.

In Layer FT, SCL FT, head FT and the linear probe every block below the first tuned block is
frozen (``hf_nc.adapters`` cut the graph there). Without training augmentation or dropout in the
prefix, that prefix computes the same hidden states for the same image in every epoch. A
:class:`PrefixCache` computes them once (``PrefixCache.build``), keeps them in RAM up to a budget
or in a memory-mapped file, and is itself a ``torch.utils.data.Dataset`` whose items are
``{"pixel_values": <cached hidden states>, "labels": <label>}`` in the dataset's order, so a
``transformers.Trainer`` trains on it unchanged::

    cache = PrefixCache.build(model, train_view, collate_fn, batch_size=64)
    cache.attach(model)                     # the model now also accepts cached states
    trainer = NCTrainer(model=model, train_dataset=cache, data_collator=collate_fn, ...)
    trainer.train()                         # same losses as with train_dataset=train_view
    model.save_pretrained(out)              # the normal adapter: the cache changes no weights

How the model runs from the cache: :meth:`PrefixCache.attach` replaces the ``forward`` of the stem
(the embeddings and the modules between them and the first block, from the backbone spec:
``Backbone.stem_paths``) and of the blocks below the first tuned block by pass-throughs. They
pass the input on only when the model is called with *cached* states, recognised by their shape
(a 3-D ``(batch, tokens, width)`` tensor in ``pixel_values`` instead of a 4-D image batch); image
batches (evaluation, the NC train subset) run the real modules. The embeddings receive the cached
tensor, hand it on, the frozen blocks hand it on, and the first tuned block sees exactly the
hidden states it would have computed. For SCL's default ``skip_source="delta"``, the frozen block
``l``'s own output ``h̄_l`` (frozen too) is cached beside its input (the cached tensor holds both,
concatenated along the tokens) and is returned by the frozen copy of block ``l``.

Exactness: the cached run equals the uncached run with the same seed up to float rounding (the
same hidden states enter the tuned block; the build consumes no random numbers of the training
run). :func:`prefix_cache_problems` lists what would break that and :meth:`PrefixCache.build`
refuses it: a trainable parameter in the prefix, dropout or stochastic depth in the prefix
(``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``drop_path_rate``, ... > 0: they are
active in train mode), or a dataset whose items differ between reads (training augmentation).

The cache does not make the blocks after the tuned one cheaper: they still run forward and
backward on every step. Tuning an early block therefore gains little (at block 2 of 12 the
prefix is ~10% of the step); at late blocks it removes most of the step.

Under ``torch.distributed`` each rank computes the rows of its own shard of the dataset
(indices ``rank::world_size``) and the shards are exchanged batch by batch (``all_gather``), so
every rank holds the whole cache: the Trainer's ``DistributedSampler`` draws any index on any
rank, in a different split every epoch. ``nn.DataParallel`` (several GPUs in one process) is not
supported: its replicas would call the original modules; launch one process per GPU instead.
Per-block NC (``LayerFeatures`` on blocks below the cut) needs those blocks to run: measure it on
images, not on cached rows.

The package: ``checks`` (the cut and what would make the cache inexact), ``storage`` (RAM or
memory-mapped rows), ``capture`` (the build's hooks at the cut), ``cache`` (:class:`PrefixCache`
and its build, DDP shards included), ``attach`` (:class:`PrefixCacheHandle`, the pass-through
forwards) and ``layout`` (:class:`PrefixLayout`, :class:`PrefixCacheError`).
"""

from .attach import PrefixCacheHandle
from .cache import PrefixCache
from .checks import dataset_problems, first_tuned_block, prefix_cache_problems
from .layout import PrefixCacheError, PrefixLayout, training_autocast_dtype
from .storage import DEFAULT_MEMORY_BUDGET  # noqa: F401  (PrefixCache.build's default RAM budget, importable here as before)

__all__ = [
    "PrefixCache",
    "PrefixCacheError",
    "PrefixCacheHandle",
    "PrefixLayout",
    "first_tuned_block",
    "prefix_cache_problems",
    "dataset_problems",
    "training_autocast_dtype",
]
