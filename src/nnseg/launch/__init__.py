"""Running a training: one process, ``-num_gpus N`` local ranks or one rank of a torchrun job, then the final
validation (:func:`nnseg.launch.train.run_training` over a typed :class:`nnseg.launch.request.TrainRequest`)."""
