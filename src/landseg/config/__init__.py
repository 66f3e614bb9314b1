"""landseg.config"""
