"""Structure-shaping losses for deep embeddings: a literate book and a PyTorch library

Modules:

- `structloss.at_a_glance`: Every loss of the book moves the same toy batch on the circle, side by side and animated step by step, each panel with its VARIANCE and GREEDINESS numbers.
- `structloss.bench`: Every loss timed against its own floor and against pytorch-metric-learning, in one process and one run: forward and backward time, peak memory, the naive loops, and the cost of a training step.
- `structloss.contrastive`: Pull each sample towards the samples that share its label and push it from all others, through a softmax over cosine similarities: InfoNCE (NT-Xent) and supervised contrastive learning (SupCon).
- `structloss.core`: The few rules every chapter of structloss relies on: which *profile* a notebook runs in, how results are stamped with their provenance, how every loss and metric rejects bad input, and the base class every loss shares.
- `structloss.data`: Datasets with fixed train/validation/test splits, the papers' image pipelines, and a two-view wrapper: the data half of the bench every experiment in the book runs on.
- `structloss.distributed`: A batch-global loss on the batch of every process: a gradient-preserving all-gather, class sums all-reduced instead of embeddings gathered, and a class-balanced sampler split across ranks.
- `structloss.experiments`: An experiment is data — dataset, model, objective, training numbers, seeds — with a `smoke`, a `cpu` and a `colab` profile. One function runs it, in a notebook or as `structloss run <experiment>`, and saves its results, histories and figures.
- `structloss.geometry`: Distances between embeddings, masks of which pairs share a label, and per-class sums and means: the four pieces every structure-shaping loss and diagnostic is built from.
- `structloss.graph`: Build a k-nearest-neighbour graph on the batch's outputs and penalise every edge that joins two classes, weighted by how close its ends are: the graph smoothness loss of Bontonou et al. (2019).
- `structloss.graph_paper`: Bontonou et al. (2019) train classifiers with the graph smoothness loss instead of cross-entropy and report the same accuracy and more robustness to corrupted inputs. Their tables and figures, condensed to data that trains in minutes on a CPU, with a verdict per claim.
- `structloss.greediness`: Active ratio, gradient norms and loss decay: the GREEDINESS diagnostics of *Variance & Greediness* (Zeng et al. 2026), as functions a training loop can call every few steps, and a comparison of every loss in this book on one batch and in one short training run.
- `structloss.latent_boost_paper`: Geißler et al. (2024) mix a Magnet-style distance loss with cross-entropy and report better accuracy, tighter clusters and earlier convergence. We rerun their Tables 2-5 on a small stand-in, with the readings of their eq. 11 that the printed equations leave open, and let the runs decide.
- `structloss.magnet`: Pull every sample towards the mean of its own cluster and away from the means of other classes' clusters, measured in units of the batch's spread: the Magnet loss of Rippel et al. (2016), and *Latent Boost*, the variant of Geißler et al. (2024) with PCA, per-cluster variances and epoch schedules.
- `structloss.memory`: A queue of the embeddings of the last few batches, used as extra positives and negatives: a larger effective batch for any loss that takes a reference set, at the cost of one forward pass's memory.
- `structloss.metrics`: How good is the structure of a set of embeddings? The classical silhouette coefficient, computed in O(N·C·d) instead of O(N²·d), the variance diagnostics of the Variance & Greediness paper, and the retrieval metrics Recall@K and MAP@R.
- `structloss.models`: An encoder, a projection head that gives the embedding the losses shape, and a linear classifier: small encoders that train in seconds on a CPU, and the papers' backbones for a GPU.
- `structloss.objectives`: One module that turns "CE + λ·Sil", "CE + SupCon2 + λ·Sil" or "λ·LatentBoost + (1−λ)·CE" into a one-liner, logs every term, and hands views to the losses that understand them.
- `structloss.pairs`: The three classical losses built from pairs and triplets of a batch, with pytorch-metric-learning's defaults, and the all-triplets margin loss computed exactly in O(N² log N) instead of O(N³).
- `structloss.proxies`: Give each class a learnable vector (a proxy, a centre, a classifier weight) and compare every sample with the C class vectors instead of with the other samples of its batch.
- `structloss.robustness`: A small corruption suite for 8×8 images and 1-D signals (noise, impulse noise, blur, contrast, shift; five severities each) and the corruption errors of Hendrycks & Dietterich (2019): mCE and relative mCE.
- `structloss.samplers`: A class-balanced batch sampler: every batch holds *P* classes with *m* samples each, and every sample is seen at least once per epoch.
- `structloss.silhouette`: A differentiable silhouette coefficient (Todescato & Carbonera, 2026): each sample is pulled towards its own class and pushed from the nearest other class *as measured by class-average distances*, a global signal that complements pairwise losses. Computed from class sums in O(N·C·d).
- `structloss.silhouette_paper`: Todescato & Carbonera (2026) add a differentiable silhouette to cross-entropy and to two-view supervised contrastive learning, and report the best average accuracy over seven image datasets for the combination. This chapter lists the paper's claims, runs its Table 1 in three offline settings with every method under one protocol, and decides each claim by a rule stated before the runs.
- `structloss.train`: One training loop for every experiment in the book — any objective, class-balanced or shuffled batches, one or two views, early stopping, a per-epoch history, checkpoints, several processes — and the evaluation every chapter reports: classifier accuracy, kNN and SVC accuracy on embeddings, Recall@K and the silhouette.
- `structloss.variance_greediness_paper`: Seven metric-learning losses on one frozen encoder, compared by what they do to the geometry of the embedding (VARIANCE) and by how they learn (GREEDINESS), with image-retrieval evaluation on classes never seen in training.
- `structloss.which_loss`: A decision table read from the book's own results files: accuracy, retrieval, structure and cost of every experiment the book has run, each number linked to the chapter and run behind it."""

__version__ = "0.1.0"

# The public API, chapter by chapter (module = chapter, see the book).
from .core import *          # 00 conventions
from .geometry import *      # 01 geometry of embeddings
from .metrics import *       # 02 diagnostics
from .silhouette import *    # 10 Soft Silhouette loss
from .pairs import *         # 11 pair-based losses
from .contrastive import *   # 12 softmax contrastive losses
from .proxies import *       # 13 proxy and centre losses
from .magnet import *        # 14 magnet loss and Latent Boost
from .graph import *         # 15 graph smoothness loss
from .objectives import *    # 16 objectives
from .greediness import *    # 17 greediness diagnostics
from .data import *          # 20 lab bench: data
from .samplers import *      # 21 lab bench: batch samplers
from .models import *        # 22 lab bench: models
from .train import *         # 23 lab bench: training and evaluation
from .experiments import *   # 24 lab bench: experiments and the CLI
from .distributed import *   # 41 training across processes
from .memory import *        # 42 cross-batch memory
