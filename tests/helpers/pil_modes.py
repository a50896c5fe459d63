"""Every Pillow image mode a user may hand the SDK (sdk/imaging.py converts or refuses each)."""

PIL_MODES = [
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "I",
    "I;16",
    "I;16B",
    "F",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "HSV",
    "LAB",
]
