"""Dataset creation: the synthetic shapes dataset and COCO TFRecords."""
