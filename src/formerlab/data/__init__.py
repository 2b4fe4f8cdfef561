"""Corpora (embedded default corpus), evaluation sets, synthetic tasks, batching, LRA ListOps."""

from .batching import step_generator, window_batch
from .corpora import SPLITS, TextCorpus, default_corpus, load_corpus, stdlib_source_files
from .evalsets import EvalSet, last_tokens_samples, non_repeated_set, repeated_set
from .listops import ClassificationDataset, listops_dataset
from .synthetic import copy_task, even_pairs_task, kv_retrieval_task

__all__ = [
    "SPLITS",
    "ClassificationDataset",
    "EvalSet",
    "TextCorpus",
    "copy_task",
    "default_corpus",
    "even_pairs_task",
    "kv_retrieval_task",
    "last_tokens_samples",
    "listops_dataset",
    "load_corpus",
    "non_repeated_set",
    "repeated_set",
    "stdlib_source_files",
    "step_generator",
    "window_batch",
]
