"""ARNIQA's strength per distortion type and level, measured once; the tests compare ours to it.

``REFERENCE[name] = ((PSNR L1..L5 in dB), (SSIM L1..L5))``: means over the four photo crops of
:func:`tests.training.strength.photo_set`, measured with :func:`~tests.training.strength.psnr`
(capped at 100 dB) and :func:`~tests.training.strength.ssim`.

How they were measured (Dec 2026; the script is not part of this repository, and no ARNIQA code
is): a throwaway checkout of miccunifi/ARNIQA (``utils/distortions.py``,
``utils/utils_distortions.py``, ``utils/utils_data.py``: ``distortion_range`` and
``distortion_functions``) with kornia 0.9.0, torch 2.14, numpy 2.4, PIL 13. Each function was
called on a clone of each ``(3, 224, 224)`` crop with the published value of the level, its output
clipped to [0, 1] in float32 as ARNIQA's ``distort_images`` does. Random types (motion blur,
colour shift, the four noises, non-eccentricity, colour blocks, jitter) were averaged over seeds
0..2 of ``random``/``numpy``/``torch`` (jitter 0..1); the others are deterministic. Two changes
were needed just to run the code on current libraries, neither altering what it computes: the
numpy-array index in ``impulse_noise`` is passed as a tuple (what older torch did with it), and
the 3-point spline stores its scalar with ``.item()`` (numpy 2 refuses a 1-element array there).

One entry is measured against a corrected ARNIQA, the documented deviation ``jitter`` (see
docs/distortions.md): ARNIQA's ``imscatter`` crops its padded result with the two pad widths
swapped, which, whenever they differ, moves the whole image by a pixel. The entry is ARNIQA with
that crop fixed; :data:`JITTER_AS_PUBLISHED` keeps what ARNIQA measures as published.
"""

from __future__ import annotations

#: ARNIQA's jitter as published (PSNR, SSIM per level), for the record.
JITTER_AS_PUBLISHED: tuple[tuple[float, ...], tuple[float, ...]] = (
    (38.94, 34.31, 30.55, 22.57, 22.06),
    (0.9874, 0.9624, 0.9105, 0.6831, 0.6329))

REFERENCE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "gaussian_blur": ((100.0, 38.69, 30.32, 26.66, 22.9),
                     (1.0, 0.9856, 0.898, 0.7895, 0.6425)),
    "lens_blur": ((33.56, 29.42, 26.05, 24.5, 23.32),
                 (0.9498, 0.8721, 0.7587, 0.6908, 0.6412)),
    "motion_blur": ((100.0, 36.37, 31.16, 28.84, 26.37),
                   (1.0, 0.9731, 0.9155, 0.8643, 0.7865)),
    "color_diffusion": ((34.99, 15.14, 11.28, 10.16, 8.39),
                       (0.955, 0.6859, 0.4949, 0.4448, 0.3739)),
    "color_shift": ((33.81, 30.28, 28.62, 27.96, 27.36),
                   (0.9799, 0.9623, 0.9513, 0.9472, 0.9436)),
    "saturation_hsv": ((20.3, 17.8, 16.78, 15.86, 13.1),
                      (0.8777, 0.8432, 0.8264, 0.81, 0.7498)),
    "saturation_lab": ((50.98, 19.05, 14.86, 11.4, 9.66),
                      (0.9977, 0.786, 0.659, 0.4657, 0.3758)),
    "jpeg2000": ((34.29, 30.56, 28.99, 25.14, 23.67),
                (0.9061, 0.8429, 0.8098, 0.6938, 0.6446)),
    "jpeg": ((31.36, 30.94, 29.8, 25.55, 23.12),
            (0.8844, 0.8755, 0.8479, 0.7197, 0.6485)),
    "white_noise": ((30.21, 27.25, 25.52, 23.36, 20.47),
                   (0.7122, 0.5879, 0.5122, 0.4195, 0.3066)),
    "white_noise_ycbcr": ((35.52, 28.63, 25.68, 22.75, 21.07),
                         (0.881, 0.6568, 0.5309, 0.4072, 0.3408)),
    "impulse_noise": ((34.97, 27.83, 24.83, 21.86, 20.16),
                     (0.9751, 0.8829, 0.7832, 0.6285, 0.5191)),
    "multiplicative_noise": ((36.8, 29.92, 27.0, 24.12, 20.38),
                            (0.9151, 0.7671, 0.6782, 0.5809, 0.4516)),
    "brighten": ((28.63, 22.63, 16.63, 11.93, 8.96),
                (0.9885, 0.9631, 0.8923, 0.7596, 0.5912)),
    "darken": ((34.85, 28.83, 22.81, 16.79, 11.19),
              (0.9974, 0.9891, 0.9515, 0.7707, 0.3173)),
    "mean_shift": ((100.0, 21.99, 22.49, 16.62, 17.22),
                  (1.0, 0.9017, 0.8724, 0.84, 0.7387)),
    "jitter": ((38.92, 34.29, 30.53, 26.74, 24.16),
              (0.9874, 0.9623, 0.9104, 0.804, 0.6849)),
    "non_eccentricity": ((26.95, 24.63, 22.89, 21.36, 20.75),
                        (0.9363, 0.8843, 0.8347, 0.7921, 0.7547)),
    "pixelate": ((23.29, 23.12, 22.58, 21.98, 20.38),
                (0.7031, 0.6943, 0.6749, 0.6511, 0.5825)),
    "quantization": ((30.35, 28.33, 26.35, 25.25, 22.03),
                    (0.9018, 0.874, 0.8418, 0.8102, 0.7409)),
    "color_blocks": ((22.44, 19.24, 17.86, 16.48, 15.36),
                    (0.9553, 0.914, 0.8802, 0.8419, 0.8028)),
    "over_sharpen": ((25.07, 20.43, 18.11, 14.8, 12.41),
                    (0.8677, 0.7414, 0.6526, 0.4975, 0.3587)),
    "linear_contrast": ((27.72, 22.86, 27.72, 19.85, 21.7),
                       (0.9559, 0.8528, 0.9702, 0.7549, 0.8947)),
    "nonlinear_contrast": ((25.47, 19.45, 15.93, 13.43, 12.4),
                          (0.8983, 0.8176, 0.7102, 0.5717, 0.4935)),
}
