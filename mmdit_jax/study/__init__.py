"""The pooled-CLIP study (issue #7): a contrastively pretrained toy CLIP, pooled-embedding removal and steering."""
