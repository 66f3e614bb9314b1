"""landseg.models"""
