"""companion: the loss functions of the book *Losses, Derived*, derived, tested and benchmarked.

One module per topic, each with a functional core in the style of ``torch.nn.functional``
(``something_loss(input, target, ..., reduction="mean")``) and, where a loss owns parameters,
a ``torch.nn.Module`` that calls the function. Every public loss is also importable from the
package itself::

    import companion as cp

    head = cp.ArcFaceLoss(512, 10_000)
    loss = cp.clip_loss(image_features, text_features, logit_scale.exp())

Checks that read tensor values (NaN, infinities, target ranges) can be turned off in a hot
training loop with :func:`set_value_checks` / :func:`value_checks`; then a forward and backward
pass of a production loss makes no host sync and compiles with ``torch.compile(fullgraph=True)``.

The functions :func:`companion.sigmoid.sigmoid` and :func:`companion.softmax.softmax` are not
re-exported: their names belong to their modules (``companion.sigmoid``, ``companion.softmax``).

Shared helpers, not re-exported here (they are for the book and for experiments):
:mod:`companion.data` (seeding and data generators), :mod:`companion.metrics` (evaluation
numbers such as retrieval accuracy), :mod:`companion.plot` (the book's figure style, needs
matplotlib) and :mod:`companion.train` (a small training loop).

Examples:
    >>> import torch, companion as cp
    >>> logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    >>> with cp.value_checks(False):  # as in a training loop: no host sync
    ...     loss = cp.cross_entropy(logits, target)
    >>> round(loss.item(), 4)
    0.1698
"""

from companion._validate import set_value_checks, value_checks, value_checks_enabled
from companion.contrastive import (
    ClipLoss,
    clip_loss,
    contrastive_loss,
    info_nce_loss,
    soft_target_clip_loss,
    supervised_contrastive_loss,
    triplet_loss,
)
from companion.imbalance import (
    adjust_logits,
    asymmetric_loss,
    class_balanced_weights,
    focal_loss,
    logit_adjusted_cross_entropy,
    poly1_cross_entropy,
    sigmoid_focal_loss,
)
from companion.invented import (
    dot_product_loss,
    exponent_threshold,
    inverse_loss,
    inverse_power_loss,
    target_log_prob,
)
from companion.linear import (
    LinearCrossEntropyLoss,
    linear_cross_entropy,
    vocab_shard_range,
)
from companion.logistic import (
    LogisticRegression,
    add_intercept,
    logistic_gradient,
    logistic_loss,
)
from companion.margin import (
    LSOFTMAX_SCHEDULE,
    SPHEREFACE_SCHEDULE,
    AMSoftmaxLoss,
    ArcFaceLoss,
    ASoftmaxLoss,
    CosineMarginHead,
    LambdaSchedule,
    LSoftmaxLoss,
    MarginHead,
    ScheduledMarginHead,
    additive_angular_margin,
    additive_angular_margin_loss,
    additive_margin_softmax_loss,
    angular_softmax_loss,
    large_margin_softmax_loss,
    multiplicative_angular_margin,
)
from companion.minmax import (
    DISTANCES,
    LabelEmbeddingClassifier,
    class_separation,
    min_max_loss,
    pairwise_distance,
    sample_other_classes,
)
from companion.multilabel import (
    binary_cross_entropy_with_logits,
    hamming_loss,
    multilabel_soft_margin_loss,
    per_label_f1,
    predict_labels,
    subset_accuracy,
)
from companion.nce import (
    CandidateSampler,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
    full_softmax_loss,
    nce_loss,
    negative_sampling_loss,
    sampled_softmax_loss,
)
from companion.partial_fc import (
    PartialFC,
    combined_margin,
    num_sampled_classes,
    partial_fc_loss,
    sample_classes,
    shard_range,
)
from companion.siglip import (
    SigLipLoss,
    siglip_loss,
)
from companion.sigmoid import (
    log1m_sigmoid,
    log_sigmoid,
    logit,
    sigmoid_grad,
    softplus,
)
from companion.softmax import (
    cross_entropy,
    cross_entropy_grad,
    log_softmax,
    logsumexp,
)
from companion.zoo import (
    WEIGHTED_REDUCTIONS,
    MultiTaskLoss,
    absolute_difference,
    binary_hinge_loss,
    cosine_distance,
    huber_loss,
    l2_regularization,
    log_loss,
    mean_pairwise_squared_error,
    mse_loss,
    multiclass_hinge_loss,
    squared_hinge_loss,
    weighted_loss,
)

# The one place the version is written: pyproject.toml reads it from here (a dynamic version),
# and the site, CITATION.cff and CHANGELOG.md are checked against it (tests/test_release.py).
__version__ = "0.2.0"

__all__ = [
    "DISTANCES",
    "LSOFTMAX_SCHEDULE",
    "SPHEREFACE_SCHEDULE",
    "WEIGHTED_REDUCTIONS",
    "AMSoftmaxLoss",
    "ASoftmaxLoss",
    "ArcFaceLoss",
    "CandidateSampler",
    "ClipLoss",
    "CosineMarginHead",
    "LSoftmaxLoss",
    "LabelEmbeddingClassifier",
    "LambdaSchedule",
    "LinearCrossEntropyLoss",
    "LogUniformSampler",
    "LogisticRegression",
    "MarginHead",
    "MultiTaskLoss",
    "PartialFC",
    "ScheduledMarginHead",
    "SigLipLoss",
    "UniformSampler",
    "UnigramSampler",
    "absolute_difference",
    "add_intercept",
    "additive_angular_margin",
    "additive_angular_margin_loss",
    "additive_margin_softmax_loss",
    "adjust_logits",
    "angular_softmax_loss",
    "asymmetric_loss",
    "binary_cross_entropy_with_logits",
    "binary_hinge_loss",
    "class_balanced_weights",
    "class_separation",
    "clip_loss",
    "combined_margin",
    "contrastive_loss",
    "cosine_distance",
    "cross_entropy",
    "cross_entropy_grad",
    "dot_product_loss",
    "exponent_threshold",
    "focal_loss",
    "full_softmax_loss",
    "hamming_loss",
    "huber_loss",
    "info_nce_loss",
    "inverse_loss",
    "inverse_power_loss",
    "l2_regularization",
    "large_margin_softmax_loss",
    "linear_cross_entropy",
    "log1m_sigmoid",
    "log_loss",
    "log_sigmoid",
    "log_softmax",
    "logistic_gradient",
    "logistic_loss",
    "logit",
    "logit_adjusted_cross_entropy",
    "logsumexp",
    "mean_pairwise_squared_error",
    "min_max_loss",
    "mse_loss",
    "multiclass_hinge_loss",
    "multilabel_soft_margin_loss",
    "multiplicative_angular_margin",
    "nce_loss",
    "negative_sampling_loss",
    "num_sampled_classes",
    "pairwise_distance",
    "partial_fc_loss",
    "per_label_f1",
    "poly1_cross_entropy",
    "predict_labels",
    "sample_classes",
    "sample_other_classes",
    "sampled_softmax_loss",
    "set_value_checks",
    "shard_range",
    "siglip_loss",
    "sigmoid_focal_loss",
    "sigmoid_grad",
    "soft_target_clip_loss",
    "softplus",
    "squared_hinge_loss",
    "subset_accuracy",
    "supervised_contrastive_loss",
    "target_log_prob",
    "triplet_loss",
    "value_checks",
    "value_checks_enabled",
    "vocab_shard_range",
    "weighted_loss",
]
