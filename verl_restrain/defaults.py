"""This project's default RESTRAIN hyperparameters, kept in one place.

The paper does not publish its values of sigma, center (k), kappa and delta, so these are this
project's choices for the paper's setting of n = 16 rollouts per prompt. Every one is exposed as
configuration (``algorithm.restrain.*``, ``restrain-score-prompts --sigma/--center``, the sandbox).

``CENTER = 1.0``
    g(f) = exp(-(f - k)^2 / (2 sigma^2)) then rises monotonically with the vote share f in [0, 1]:
    a more frequent answer always weighs more, but a minority answer is never zeroed out. With
    k = 1 the Gaussian weighting interpolates between the two baselines it generalises: sigma -> 0
    gives majority voting (TTRL), sigma -> inf gives uniform weights. The same g gives the prompt
    weight u_x = g(c_ref / n): prompts on which the frozen base model agrees with itself keep
    u_x ~ 1, low-consistency prompts are scaled down.

``SIGMA = 0.4``
    Chosen so that, at n = 16, the majority still dominates but the evidence in minority answers
    survives. Shares 8/16 vs 4/16 weigh 2.7 : 1; a lone answer (1/16) weighs 1/7 of an 8/16
    majority. As a prompt weight: u(1) = 1, u(0.75) = 0.82, u(0.5) = 0.46, u(0.25) = 0.17,
    u(1/16) = 0.06, u(0) = 0.04 (a prompt whose base-model samples have no valid answer).

``KAPPA = 4``
    A group is penalised when its most common answer is held by fewer than 4 of 16 rollouts
    (M/n < 25%). At that level the "majority" is two or three coinciding answers, which the model
    produces by chance on a hard problem; voting on it trains on noise, so RESTRAIN pushes every
    rollout down instead.

``DELTA = 0.5``
    The advantage given to every rollout of a penalised group. It is half the unit scale of a
    std-normalised GRPO advantage: a penalised prompt pushes probability away from its rollouts
    more gently than an informative prompt moves its own, so early in training, when many prompts
    fall below kappa, the penalty does not drown the signal from the rest of the batch.

``NUM_ROLLOUTS = 16``
    The n these values were chosen for; kappa should scale with n (kappa ~ n/4).
"""

SIGMA = 0.4
CENTER = 1.0
KAPPA = 4
DELTA = 0.5
NUM_ROLLOUTS = 16
EPSILON = 1e-6

# Parquet columns written by the offline scoring job and read by the trainer.
PROMPT_WEIGHT_COLUMN = "restrain_prompt_weight"
REF_MAJORITY_COUNT_COLUMN = "restrain_ref_majority_count"
REF_NUM_SAMPLES_COLUMN = "restrain_ref_num_samples"
REF_MAJORITY_ANSWER_COLUMN = "restrain_ref_majority_answer"
REF_ANSWER_COUNTS_COLUMN = "restrain_ref_answer_counts"
