"""The cost model: features of kernel groups, datasets of build figures (and GPU times), learned models,
the roofline baseline, and the choice among candidate rewrites under an accuracy budget.

Modules: `features` (IR + launch features, bag of ops), `mlir` (optional torch-mlir op tokens),
`profile` (kernels of a compiled module -> dataset rows), `dataset` (versioned files in `data/`),
`models` (gradient boosting + bag-of-ops, JSON model files), `roofline` (per-arch analytic time),
`evaluate` (Spearman / MAPE), `select` (per-site plan under a budget).
This layer imports passes, codegen, ir, config and errors; never the runtime, pipeline or api
(compiled modules are handed in and read by duck typing).
"""
