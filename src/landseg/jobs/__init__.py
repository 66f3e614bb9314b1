"""landseg.jobs"""
