"""The data path: every byte a training step consumes comes through here.

``storage/`` holds where the bytes live (the :class:`Storage` interface, filesystem, S3 by
boto3 or the AWS CRT, the local server's credentials file); ``formats/`` what an annotation
says (records; VOC, COCO, Open Images, folders, CSV; hash splits); ``samples`` bytes to
tensors; ``shards/`` WebDataset tar shards (manifest, writer, reader, tar parser); ``access/``
the three access patterns (random, shards, objects), wired into a DataLoader by ``loaders``.
Nothing here imports ``training``, ``serve`` or ``bench``.
"""
