"""The models: image operations, the two classifiers, their training loop, augmentation,
the tf.Transform preprocessing and the exported-model contract (`exported`)."""
