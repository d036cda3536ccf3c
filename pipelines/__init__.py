"""The data path: every byte a training step consumes comes through here. Read it top-down:

1. ``storage/`` where the bytes live: ``base`` (the :class:`Storage` interface, errors,
   request counters), ``filesystem``, ``s3`` (boto3), ``s3_connector`` (AWS CRT),
   ``env_file`` (the local server's credentials file).
2. ``formats/`` what an annotation says: ``records`` (one image and its labels), ``voc``,
   ``coco``, ``oid``, ``folders``, ``csv_boxes``; ``hash_split`` for datasets without splits.
3. ``samples`` bytes to tensors: decode, transforms, batches.
4. ``shards/`` WebDataset tar shards: ``manifest`` (layout and checks), ``writer``,
   ``reader``, ``tar_stream`` (the tar parser).
5. ``access/`` the three access patterns: ``map_style`` (random), ``shard_stream`` (shards),
   ``object_stream`` (objects); ``loaders`` wires them into a DataLoader.

Nothing here imports ``training``, ``serve`` or ``bench``.
"""
