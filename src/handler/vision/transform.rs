//! torchvision's transforms on a decoded RGB image, written straight into the model's f32
//! input: `Resize(256)` (the shorter side to 256, the longer `int(256 * long / short)`, Pillow's
//! antialiased bilinear filter, to the bit), `CenterCrop(224)` (offsets rounded
//! half to even, as Python's `round`; zero padding when smaller), `ToTensor` (`/ 255` in f32,
//! channels first) and `Normalize` (`(x - mean) / std` in f32).

use super::decode::{Rgb, PILLOW_MAX_IMAGE_PIXELS};
use crate::error::ServeError;

/// ImageNet's channel statistics, as every built-in vision handler normalises.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `Resize(short)`: the output size torchvision computes.
pub fn resized_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    let (small, large) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python: int(short * long / small), a true division then truncation.
    let long = (f64::from(short) * f64::from(large) / f64::from(small)) as u32;
    if width <= height {
        (short, long)
    } else {
        (long, short)
    }
}

/// `Resize(short)` with Pillow's bilinear (antialiased) filter.
pub fn resize(image: Rgb, short: u32) -> Result<Rgb, ServeError> {
    let (width, height) = resized_size(image.width, image.height, short);
    if (width, height) == (image.width, image.height) {
        return Ok(image);
    }
    // A very thin image grows enormously along its long side; Pillow would try.
    if u64::from(width) * u64::from(height) > 2 * PILLOW_MAX_IMAGE_PIXELS {
        return Err(ServeError::bad_input(format!(
            "the image ({} × {}) would be resized to {width} × {height} pixels, more than {} pixels",
            image.width,
            image.height,
            2 * PILLOW_MAX_IMAGE_PIXELS
        )));
    }
    let pixels =
        super::resample::resize_rgb(&image.pixels, (image.width, image.height), (width, height));
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

/// `CenterCrop(size)` + `ToTensor` + `Normalize(MEAN, STD)` into `out` ([3, size, size],
/// channels first).
pub fn crop_normalize(image: &Rgb, size: u32, out: &mut [f32]) {
    let (w, h, size) = (image.width as i64, image.height as i64, size as i64);
    // Smaller than the crop: torchvision pads with zeros (left/top get the smaller half),
    // then crops the middle.
    let (pad_left, pad_top) = ((size - w).max(0) / 2, (size - h).max(0) / 2);
    let (pw, ph) = (w.max(size), h.max(size));
    let left = ((pw - size) as f64 / 2.0).round_ties_even() as i64 - pad_left;
    let top = ((ph - size) as f64 / 2.0).round_ties_even() as i64 - pad_top;
    let plane = (size * size) as usize;
    for y in 0..size {
        let sy = top + y;
        for x in 0..size {
            let sx = left + x;
            let inside = (0..h).contains(&sy) && (0..w).contains(&sx);
            let at = ((sy * w + sx) * 3) as usize;
            for c in 0..3 {
                let p = if inside { image.pixels[at + c] } else { 0 };
                out[c * plane + (y * size + x) as usize] =
                    (f32::from(p) / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
}

/// `ToTensor` alone (the object detector's transform): [3, H, W] in [0, 1].
pub fn to_tensor(image: &Rgb) -> Vec<f32> {
    let plane = image.width as usize * image.height as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in image.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(px[c]) / 255.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_offsets_are_torchvisions() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(333, 500, 256), (256, 384));
        assert_eq!(resized_size(17, 11, 256), (395, 256));
        assert_eq!(resized_size(256, 256, 256), (256, 256));
        // 341 wide: (341 - 224) / 2 = 58.5 rounds to 58 (half to even), so column 58 first.
        let width = 341;
        let pixels: Vec<u8> = (0..256 * width)
            .flat_map(|i| {
                let x = (i % width) as u8;
                [x, x, x]
            })
            .collect();
        let image = Rgb {
            width: width as u32,
            height: 256,
            pixels,
        };
        let mut out = vec![0f32; 3 * 224 * 224];
        crop_normalize(&image, 224, &mut out);
        assert_eq!(out[0], (58f32 / 255.0 - MEAN[0]) / STD[0]);
        assert_eq!(out[224 * 224 + 1], (59f32 / 255.0 - MEAN[1]) / STD[1]);
    }

    #[test]
    fn small_images_are_padded_with_zeros() {
        let image = Rgb {
            width: 2,
            height: 1,
            pixels: vec![255; 6],
        };
        let mut out = vec![9f32; 3 * 4 * 4];
        crop_normalize(&image, 4, &mut out);
        let zero = (0.0 - MEAN[0]) / STD[0];
        let full = (1.0 - MEAN[0]) / STD[0];
        // Padding: 1 column left, 1 right; 1 row top, 2 rows bottom.
        let row1: Vec<f32> = out[4..8].to_vec();
        assert_eq!(row1, vec![zero, full, full, zero]);
        assert!(out[..4].iter().all(|&v| v == zero));
    }
}
