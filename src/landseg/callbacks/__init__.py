"""landseg.callbacks"""
