//! Images opened as TorchServe's vision handlers open them (`PIL.Image.open`): the same
//! formats, the same pixels (JPEG through libjpeg-turbo's decoder with its default slow integer
//! IDCT and fancy upsampling, as Pillow's wheels), the same mode, the same decompression-bomb
//! limit. Only RGB images go on: the handlers' transforms take three channels, and any other
//! mode fails inside them on TorchServe.

use std::io::Cursor;

use image::{ExtendedColorType, ImageDecoder, ImageFormat};

use crate::error::ServeError;

/// Pillow's `Image.MAX_IMAGE_PIXELS`; it refuses images of more than twice as many pixels.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// With Pillow's limit lifted (`limit_max_image_pixels=false`) an image may still not take
/// more than this: a header can claim any size, and memory is finite (3 GiB of RGB).
const HARD_MAX_PIXELS: u64 = 1 << 30;

/// Decoded RGB pixels, row-major, three bytes per pixel.
#[derive(Debug)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// The formats Pillow opens that the handlers take, by the name messages give them.
fn format_name(format: ImageFormat) -> Option<&'static str> {
    Some(match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        _ => return None,
    })
}

/// Decodes an image to RGB; `max_pixels` is Pillow's bomb limit (None: unlimited, as with
/// `limit_max_image_pixels=false`). The size is checked from the header, before any pixel
/// memory is taken.
pub fn decode(bytes: &[u8], max_pixels: Option<u64>) -> Result<Rgb, ServeError> {
    // By the file's magic bytes, as Pillow tells formats apart.
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| format_name(*f).is_some())
        .ok_or_else(|| {
            ServeError::bad_input(
                "cannot identify image file: not a JPEG, PNG, GIF, BMP, WebP or TIFF image",
            )
        })?;
    let check_size = |width: u32, height: u32| {
        let pixels = u64::from(width) * u64::from(height);
        match max_pixels {
            Some(limit) if pixels > 2 * limit => Err(ServeError::bad_input(format!(
                "Image size ({pixels} pixels) exceeds limit of {} pixels, could be decompression bomb DOS attack.",
                2 * limit
            ))),
            None if pixels > HARD_MAX_PIXELS => Err(ServeError::bad_input(format!(
                "Image size ({pixels} pixels) exceeds ferroserve's limit of {HARD_MAX_PIXELS} pixels, which limit_max_image_pixels=false does not lift"
            ))),
            _ if pixels == 0 => Err(ServeError::bad_input("the image has no pixels")),
            _ => Ok(()),
        }
    };
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, check_size),
        other => decode_other(bytes, other, check_size),
    }
}

fn wrong_mode(format: &str, mode: &str) -> ServeError {
    let channels = match mode {
        "RGBA" | "CMYK" => "4 channels",
        "LA" => "2 channels",
        _ => "1 channel",
    };
    ServeError::bad_input(format!(
        "the {format} image is mode {mode} ({channels}); the handler's transforms take RGB images (3 channels): convert it to RGB"
    ))
}

fn corrupt(format: &str, reason: impl std::fmt::Display) -> ServeError {
    ServeError::bad_input(format!("cannot decode the {format} image: {reason}"))
}

/// A JPEG whose data ends before its end-of-image marker: Pillow refuses it ("image file is
/// truncated") where libjpeg alone would fill the rest with grey. Entropy-coded data never
/// holds `FF D9`, so the image is whole when that marker follows the last start of scan.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end < scan,
        _ => true,
    }
}

fn decode_jpeg(
    bytes: &[u8],
    check_size: impl Fn(u32, u32) -> Result<(), ServeError>,
) -> Result<Rgb, ServeError> {
    use mozjpeg::ColorSpace;
    if jpeg_is_truncated(bytes) {
        return Err(corrupt("JPEG", "image file is truncated"));
    }
    // libjpeg reports fatal errors by unwinding out of its error handler.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Rgb, ServeError> {
            let jpeg = mozjpeg::Decompress::new_mem(bytes).map_err(|e| corrupt("JPEG", e))?;
            let (width, height) = jpeg.size();
            check_size(width as u32, height as u32)?;
            match jpeg.color_space() {
                ColorSpace::JCS_GRAYSCALE => return Err(wrong_mode("JPEG", "L")),
                ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                    return Err(wrong_mode("JPEG", "CMYK"))
                }
                _ => {}
            }
            let mut started = jpeg.rgb().map_err(|e| corrupt("JPEG", e))?;
            let pixels: Vec<u8> = started.read_scanlines().map_err(|e| corrupt("JPEG", e))?;
            started.finish().map_err(|e| corrupt("JPEG", e))?;
            Ok(Rgb {
                width: width as u32,
                height: height as u32,
                pixels,
            })
        },
    ));
    decoded.unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".into());
        Err(corrupt("JPEG", reason))
    })
}

/// Pillow's mode of a PNG, from its header's colour type and bit depth.
fn png_mode(bytes: &[u8]) -> &'static str {
    match (bytes.get(24), bytes.get(25)) {
        (Some(1), Some(0)) => "1",
        (Some(16), Some(0)) => "I;16",
        (_, Some(0)) => "L",
        (_, Some(2)) => "RGB",
        (_, Some(3)) => "P",
        (_, Some(4)) => "LA",
        _ => "RGBA",
    }
}

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    check_size: impl Fn(u32, u32) -> Result<(), ServeError>,
) -> Result<Rgb, ServeError> {
    let name = format_name(format).unwrap_or("image");
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    // The pixel limit above bounds memory (as Pillow's does); image's own default would
    // refuse images Pillow opens.
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| corrupt(name, e))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    let mode = match format {
        ImageFormat::Png => png_mode(bytes),
        // Pillow opens a GIF's first frame as a palette image.
        ImageFormat::Gif => "P",
        // Bits per pixel: up to 8 is a palette in Pillow, 16 to 32 is RGB.
        ImageFormat::Bmp => match bytes.get(28) {
            Some(bits) if *bits <= 8 => "P",
            _ => "RGB",
        },
        _ => match decoder.original_color_type() {
            ExtendedColorType::Rgb8 | ExtendedColorType::Rgb16 => "RGB",
            ExtendedColorType::Rgba8 | ExtendedColorType::Rgba16 => "RGBA",
            ExtendedColorType::La8 | ExtendedColorType::La16 => "LA",
            ExtendedColorType::Cmyk8 => "CMYK",
            _ => "L",
        },
    };
    if mode != "RGB" {
        return Err(wrong_mode(name, mode));
    }
    let image = image::DynamicImage::from_decoder(decoder).map_err(|e| corrupt(name, e))?;
    Ok(Rgb {
        width,
        height,
        pixels: image.into_rgb8().into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, color: image::ColorType) -> Vec<u8> {
        let mut out = Vec::new();
        let channels = color.channel_count() as usize;
        let data = vec![7u8; width as usize * height as usize * channels];
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&data, width, height, color.into())
            .unwrap();
        out
    }

    use image::ImageEncoder;

    #[test]
    fn rgb_decodes_and_other_modes_are_named() {
        let rgb = decode(&png(4, 3, image::ColorType::Rgb8), None).unwrap();
        assert_eq!((rgb.width, rgb.height, rgb.pixels.len()), (4, 3, 36));
        let e = decode(&png(4, 3, image::ColorType::L8), None).unwrap_err();
        assert!(matches!(e, ServeError::BadInput(_)));
        assert!(
            e.to_string().contains("PNG image is mode L (1 channel)"),
            "{e}"
        );
        let e = decode(&png(4, 3, image::ColorType::Rgba8), None).unwrap_err();
        assert!(e.to_string().contains("mode RGBA (4 channels)"), "{e}");
    }

    #[test]
    fn unknown_truncated_and_oversized_images_are_refused_before_decoding() {
        let e = decode(b"hello", None).unwrap_err();
        assert!(e.to_string().contains("cannot identify image file"), "{e}");
        // A header declaring 100000 × 100000 pixels: refused from the header alone.
        let mut bomb = png(1, 1, image::ColorType::Rgb8);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let e = decode(&bomb, Some(PILLOW_MAX_IMAGE_PIXELS)).unwrap_err();
        assert!(
            e.to_string()
                .contains("Image size (10000000000 pixels) exceeds limit of 178956970 pixels"),
            "{e}"
        );
        let e = decode(&bomb, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("which limit_max_image_pixels=false does not lift"),
            "{e}"
        );
        assert!(jpeg_is_truncated(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3]));
        assert!(!jpeg_is_truncated(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0xD9]));
        let e = decode(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0xD9], None).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot decode the JPEG image"),
            "{e}"
        );
    }
}
