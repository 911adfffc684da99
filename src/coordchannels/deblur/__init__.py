"""The deblurring task (CoordGate paper, Fig. 4 and 5): U-Nets recover sharp fluorescence-microscopy
images from images blurred by a lens whose defocus grows towards the edge of the field.

- `images`: the sharp images (a seeded generator of microscopy-like cells, or a user's folder);
- `psf`: the lens, its per-pixel PSFs, exact application and a low-rank basis approximation;
- `wiener`: Wiener deconvolution in torch (the MultiWienerNet baseline's first step);
- `unet`: U-Net(d), with CoordGate or CoordConv, and MultiWienerNet;
- `data`: the data stages and the loader the trainer reads;
- `training`: the per-job loop (image-to-image MSE, learning rate halved on a plateau);
- `metrics`, `report`: PSNR/SSIM with bootstrap intervals, figures and the claims' summary.
"""
