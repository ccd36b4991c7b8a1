"""The models: image operations, the model kinds and their registry (`registry`), the
training entry point (`fit.train_candidate`), augmentation, the tf.Transform
preprocessing and the exported-model contract (`exported`)."""
