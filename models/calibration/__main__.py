from models.calibration import write

write()
