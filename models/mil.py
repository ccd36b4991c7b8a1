"""Attention-based deep multiple-instance classifier (Ilse, Tomczak & Welling, ICML 2018).

One image is one bag; its instances are the `tile_size` tiles of a row-major grid, cut
INSIDE the model with `image_ops.tile_image` (layer `ImageToBag`), so bag construction is
identical at training, evaluation and serving. Background tiles (`image_ops.tissue_mask`)
are masked: they get exactly zero attention and cannot change the prediction.

    image (B, H, W, 3) -> tiles (B, N, P, P, 3), mask (B, N)
      -> instance encoder per tile -> h (B, N, F)
      -> gated attention pooling -> z (B, F), a (B, N)
      -> dense -> P(malignant) (B, 1)

Optionally (`MilConfig.instance_loss_weight > 0`) a linear instance classifier on `h`
is trained alongside from the bag labels only (`instance_loss`, after CLAM, Lu et al.
2021): it shapes the tile embeddings so that malignant tiles stand apart, which the
attention then ranks; the bag prediction and the attention are computed as without it.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras as keras

from histopath.models import image_ops
from histopath.models.keras_utils import precision_policy, skip_autograph_for_tf_keras
from histopath.models.config import MilConfig

skip_autograph_for_tf_keras()

PROBABILITY = "probability"
ATTENTION = "attention"
INSTANCE_LOGIT = "instance_logit"  # (B, N) logits of the optional instance classifier
TISSUE_MASK = "tissue_mask"  # (B, N) 1.0 = tissue tile (only with the instance classifier)


@keras.utils.register_keras_serializable(package="histopath")
class ImageToBag(keras.layers.Layer):
    """Cuts images into a bag of tiles and marks which tiles hold tissue.

    Args:
      tile_size: tile edge in pixels; the image height and width must be multiples.
      tissue_masking: if False every tile is kept (mask all True).
      **kwargs: standard `Layer` arguments.

    Call args:
      images: float `(batch, H, W, 3)` in [0, 1].

    Returns:
      `(tiles, mask)`: tiles `(batch, N, tile, tile, 3)` row-major, mask bool `(batch, N)`.
    """

    def __init__(self, tile_size: int, tissue_masking: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.tile_size = int(tile_size)
        self.tissue_masking = bool(tissue_masking)

    def call(self, images: tf.Tensor):
        # Tissue detection uses float32 pixels regardless of the compute policy.
        tiles = image_ops.tile_image(tf.cast(images, tf.float32), self.tile_size)
        if self.tissue_masking:
            mask = image_ops.tissue_mask(tiles)
        else:
            mask = tf.ones(tf.shape(tiles)[:2], dtype=tf.bool)
        return tf.cast(tiles, self.compute_dtype), mask

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = tf.TensorShape(input_shape).as_list()
        n_tiles = None
        if height is not None and width is not None:
            n_tiles = (height // self.tile_size) * (width // self.tile_size)
        return (
            tf.TensorShape([batch, n_tiles, self.tile_size, self.tile_size, channels]),
            tf.TensorShape([batch, n_tiles]),
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(tile_size=self.tile_size, tissue_masking=self.tissue_masking)
        return config


@keras.utils.register_keras_serializable(package="histopath")
class GatedAttentionPooling(keras.layers.Layer):
    """Attention-based MIL pooling (Ilse et al. 2018, eq. 9, gated variant).

    For a bag of instance embeddings `h_k`:
    `a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))` over the unmasked instances,
    `z = sum_k a_k h_k`. Masked instances get exactly zero attention, so their content
    cannot change `z`. A bag whose instances are all masked gets zero attention and
    `z = 0` (`image_ops.tissue_mask` never produces such a bag).

    Args:
      attention_dim: hidden size `L` of `V` and `U` (`L x F`).
      gated: use the gate `sigmoid(U h)`; False gives plain `tanh` attention (eq. 8).
      kernel_initializer: initializer of `V`, `U` and `w`.
      kernel_regularizer: optional regularizer of `V`, `U` and `w`.
      **kwargs: standard `Layer` arguments.

    Call args:
      inputs: float `(batch, n_instances, features)`.
      mask: optional bool `(batch, n_instances)`; True = instance takes part.

    Returns:
      `(z, attention)`: bag embedding `(batch, features)` in the layer's compute dtype
      and float32 attention weights `(batch, n_instances)` summing to 1 over the
      unmasked instances of each bag.
    """

    def __init__(
        self,
        attention_dim: int = 64,
        gated: bool = True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.attention_dim = int(attention_dim)
        self.gated = bool(gated)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        features = int(tf.TensorShape(input_shape)[-1])
        def kernel(name, shape):
            # A fresh initializer per weight, so V, U and w are not drawn identically.
            initializer = keras.initializers.get(keras.initializers.serialize(self.kernel_initializer))
            return self.add_weight(name=name, shape=shape, initializer=initializer,
                                   regularizer=self.kernel_regularizer)

        self.attention_v = kernel("V", (features, self.attention_dim))
        self.attention_v_bias = self.add_weight(name="V_bias", shape=(self.attention_dim,), initializer="zeros")
        if self.gated:
            self.attention_u = kernel("U", (features, self.attention_dim))
            self.attention_u_bias = self.add_weight(name="U_bias", shape=(self.attention_dim,), initializer="zeros")
        self.attention_w = kernel("w", (self.attention_dim, 1))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None):
        hidden = tf.tanh(tf.matmul(inputs, self.attention_v) + self.attention_v_bias)
        if self.gated:
            gate = tf.sigmoid(tf.matmul(inputs, self.attention_u) + self.attention_u_bias)
            hidden = hidden * gate
        logits = tf.squeeze(tf.matmul(hidden, self.attention_w), axis=-1)
        logits = tf.cast(logits, tf.float32)  # softmax in float32 under mixed precision
        if mask is None:
            attention = tf.nn.softmax(logits, axis=-1)
        else:
            mask = tf.cast(mask, tf.bool)
            logits = tf.where(mask, logits, tf.fill(tf.shape(logits), -1e9))
            weights = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
            weights = weights * tf.cast(mask, tf.float32)
            total = tf.reduce_sum(weights, axis=-1, keepdims=True)
            attention = tf.math.divide_no_nan(weights, total)
        pooled = tf.einsum("bn,bnf->bf", attention, tf.cast(inputs, tf.float32))
        return tf.cast(pooled, self.compute_dtype), attention

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return tf.TensorShape([shape[0], shape[2]]), tf.TensorShape([shape[0], shape[1]])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            attention_dim=self.attention_dim,
            gated=self.gated,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer is not None
            else None,
        )
        return config


def build_instance_encoder(config: MilConfig) -> keras.Model:
    """Small CNN mapping one tile `(P, P, 3)` in [0, 1] to an embedding `(F,)`.

    Args:
      config: `encoder_filters` conv blocks (3x3 conv, ReLU, 2x2 max-pool), global
        average pooling, then a `embedding_units` ReLU layer with dropout.
    """
    tile = keras.Input((config.tile_size, config.tile_size, 3), name="tile")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_unit_range")(tile)
    for index, filters in enumerate(config.encoder_filters):
        x = keras.layers.Conv2D(int(filters), 3, padding="same", activation="relu",
                                name=f"conv{index + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dense(config.embedding_units, activation="relu", name="embedding")(x)
    x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(x)
    return keras.Model(tile, x, name="instance_encoder")


def instance_loss(bag_labels: tf.Tensor, attention: tf.Tensor, instance_logits: tf.Tensor,
                  tissue_mask: tf.Tensor) -> tf.Tensor:
    """Instance-level loss from bag labels only (CLAM's instance clustering, simplified).

    Every tissue tile of a benign bag is benign (the MIL assumption); of a malignant bag
    only the tile the attention ranks highest is taken as malignant (a pseudo-label; the
    others may be benign). Per bag: the mean binary cross-entropy over a benign bag's
    tissue tiles, or the cross-entropy of a malignant bag's top tile; averaged over bags.

    Args:
      bag_labels: `(B,)` or `(B, 1)`, 0 benign / 1 malignant.
      attention: `(B, N)` attention weights (only their order within a bag is used).
      instance_logits: `(B, N)` logits of the instance classifier.
      tissue_mask: `(B, N)`, nonzero/True = tissue tile.

    Returns:
      Scalar float32 loss.
    """
    labels = tf.reshape(tf.cast(bag_labels, tf.float32), [-1])
    logits = tf.cast(instance_logits, tf.float32)
    mask = tf.cast(tf.cast(tissue_mask, tf.bool), tf.float32)
    benign = tf.nn.sigmoid_cross_entropy_with_logits(tf.zeros_like(logits), logits)
    benign_bag_loss = tf.math.divide_no_nan(tf.reduce_sum(benign * mask, axis=-1), tf.reduce_sum(mask, axis=-1))
    ranked = tf.where(mask > 0, tf.cast(attention, tf.float32), -1.0)
    top_logit = tf.gather(logits, tf.argmax(ranked, axis=-1), batch_dims=1)
    malignant_bag_loss = tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(top_logit), top_logit)
    return tf.reduce_mean(tf.where(labels > 0.5, malignant_bag_loss, benign_bag_loss))


@keras.utils.register_keras_serializable(package="histopath")
class AttentionMilModel(keras.Model):
    """The functional MIL model, plus `instance_loss` in its training objective.

    Args:
      inputs: the functional model's inputs.
      outputs: its outputs (a dict with at least `PROBABILITY` and `ATTENTION`).
      name: model name.
      trainable: standard `keras.Model` argument.
      **kwargs: `instance_loss_weight`, the weight of `instance_loss` added to the
        compiled loss (used when the outputs include `INSTANCE_LOGIT` and
        `TISSUE_MASK`; default 0), and other `keras.Model` keyword arguments.
    """

    # The constructor mirrors Functional's, so Keras saves and revives this as a
    # functional model (see `from_config` for the extra weight).
    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        weight = float(kwargs.pop("instance_loss_weight", 0.0))
        super().__init__(inputs, outputs, name=name, trainable=trainable, **kwargs)
        self.instance_loss_weight = weight
        # Keras logs "loss" from the compiled loss only; this shows the added term.
        # Set without Keras attribute tracking: the tracker's state is no model weight.
        object.__setattr__(self, "_instance_loss_tracker", keras.metrics.Mean(name="instance_loss"))

    @property
    def metrics(self):
        others = [m for m in super().metrics if m is not self._instance_loss_tracker]
        return others + ([self._instance_loss_tracker] if self.instance_loss_weight else [])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        loss = super().compute_loss(x, y, y_pred, sample_weight)
        if self.instance_loss_weight and y is not None and INSTANCE_LOGIT in y_pred:
            labels = y[PROBABILITY] if isinstance(y, dict) else y
            value = instance_loss(labels, y_pred[ATTENTION], y_pred[INSTANCE_LOGIT], y_pred[TISSUE_MASK])
            self._instance_loss_tracker.update_state(value)
            loss += self.instance_loss_weight * value
        return loss

    def get_config(self) -> dict:
        config = super().get_config()
        config["instance_loss_weight"] = self.instance_loss_weight
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        weight = config.pop("instance_loss_weight", 0.0)
        model = super().from_config(config, custom_objects)
        model.instance_loss_weight = float(weight)
        return model


def build_mil_model(config: MilConfig) -> keras.Model:
    """Builds the attention-MIL classifier.

    Args:
      config: model options.

    Returns:
      An uncompiled `AttentionMilModel` named "mil_classifier": float32 image
      `(batch, S, S, 3)` in [0, 1] -> {"probability": float32 (batch, 1),
      "attention": float32 (batch, n_tiles)}, tiles in row-major grid order
      (`config.grid_shape`); with `config.instance_loss_weight > 0` also
      "instance_logit" and "tissue_mask" float32 (batch, n_tiles) for `instance_loss`.
    """
    size = int(config.image_size)
    with precision_policy(config.mixed_precision):
        images = keras.Input((size, size, 3), dtype=tf.float32, name="image")
        tiles, mask = ImageToBag(config.tile_size, config.tissue_masking, name="image_to_bag")(images)
        embeddings = keras.layers.TimeDistributed(
            build_instance_encoder(config), name="tile_encoder"
        )(tiles)
        bag_embedding, attention = GatedAttentionPooling(
            config.attention_dim, gated=config.gated_attention, name="attention_pooling"
        )(embeddings, mask=mask)
        x = keras.layers.Dropout(config.dropout, name="bag_dropout")(bag_embedding)
        probability = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=PROBABILITY)(x)
        attention = keras.layers.Activation("linear", dtype="float32", name=ATTENTION)(attention)
        outputs = {PROBABILITY: probability, ATTENTION: attention}
        if config.instance_loss_weight > 0:
            logits = keras.layers.Dense(1, dtype="float32", name="instance_classifier")(embeddings)
            outputs[INSTANCE_LOGIT] = keras.layers.Reshape((config.n_tiles,), dtype="float32",
                                                           name=INSTANCE_LOGIT)(logits)
            outputs[TISSUE_MASK] = keras.layers.Activation("linear", dtype="float32", name=TISSUE_MASK)(
                tf.cast(mask, tf.float32))
        return AttentionMilModel(images, outputs, name="mil_classifier",
                                 instance_loss_weight=config.instance_loss_weight)


def find_image_to_bag(model: keras.Model) -> Optional[ImageToBag]:
    """Returns the model's `ImageToBag` layer, or None for a non-MIL model."""
    for layer in model.layers:
        if isinstance(layer, ImageToBag):
            return layer
    return None


build = build_mil_model  # the registry's entry point (`models.registry`)


def training_phases(config: MilConfig, training) -> list:
    """One phase of `training.epochs` at the model's learning rate (`training.one_phase`)."""
    from histopath.models.training import one_phase

    return one_phase("MIL", config.learning_rate, training)


CUSTOM_OBJECTS = {"ImageToBag": ImageToBag, "GatedAttentionPooling": GatedAttentionPooling,
                  "AttentionMilModel": AttentionMilModel}
