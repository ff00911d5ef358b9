"""The two spellings of the COCO labels: darknet's coco.names and COCO 2017's, which DeepStack's clients know.

Darknet's coco.names, which the model's labels come from, spells six of the
80 labels otherwise than COCO 2017 does; DeepStack answered with COCO 2017's
names, and Frigate drops every prediction after a label it does not know.
The mapping works both ways, so a ``classes`` option takes either spelling.
"""

# Darknet's coco.names -> COCO 2017's names; the other 74 labels are spelled alike.
DARKNET_TO_COCO_2017 = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}
COCO_2017_TO_DARKNET = {coco: darknet for darknet, coco in DARKNET_TO_COCO_2017.items()}


def coco_2017_label(label):
    """The name COCO 2017 (and so DeepStack) gives a label of the model."""
    return DARKNET_TO_COCO_2017.get(label, label)


def model_spelling(name, model_labels):
    """The model's own spelling of a label given in either spelling; an unknown name comes back as it is."""
    if name in model_labels:
        return name
    other = DARKNET_TO_COCO_2017.get(name, COCO_2017_TO_DARKNET.get(name))
    return other if other in model_labels else name
