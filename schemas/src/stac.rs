//! The parts of a STAC Item (<https://github.com/radiantearth/stac-spec>, 1.0 and 1.1) that
//! Strata reads: assets, projection and time. STAC is extensible, so unknown fields are kept
//! rather than refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A STAC Item: one scene with its assets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StacItem {
    /// Always `Feature`.
    #[serde(rename = "type")]
    pub item_type: String,
    /// STAC version the item follows, e.g. `1.0.0`.
    pub stac_version: String,
    /// Item id, unique within its collection.
    pub id: String,
    /// Footprint as GeoJSON, when given.
    #[serde(default)]
    pub geometry: Option<serde_json::Value>,
    /// Bounding box in lon/lat, when given.
    #[serde(default)]
    pub bbox: Option<Vec<f64>>,
    /// Item properties.
    #[serde(default)]
    pub properties: StacProperties,
    /// Assets by key (`visual`, `B04`, `red`, ...).
    pub assets: BTreeMap<String, StacAsset>,
    /// Collection id, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Every other field, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Item properties Strata reads; the rest is kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StacProperties {
    /// Acquisition time (RFC 3339), or null when a range is given.
    #[serde(default)]
    pub datetime: Option<String>,
    /// Projection extension 1.x: EPSG code of the assets.
    #[serde(rename = "proj:epsg", default, skip_serializing_if = "Option::is_none")]
    pub proj_epsg: Option<u32>,
    /// Projection extension 2.x: CRS code, e.g. `EPSG:32633`.
    #[serde(rename = "proj:code", default, skip_serializing_if = "Option::is_none")]
    pub proj_code: Option<String>,
    /// Every other property, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One asset of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StacAsset {
    /// Where the asset lives: an object-store URL or a path relative to the item.
    pub href: String,
    /// Media type, e.g. `image/tiff; application=geotiff; profile=cloud-optimized`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Roles, e.g. `data`, `visual`, `thumbnail`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Electro-optical extension band descriptions.
    #[serde(rename = "eo:bands", default, skip_serializing_if = "Option::is_none")]
    pub eo_bands: Option<Vec<EoBand>>,
    /// Every other field, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An `eo:bands` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EoBand {
    /// Band name, e.g. `B04`.
    #[serde(default)]
    pub name: Option<String>,
    /// Common name, e.g. `red`.
    #[serde(default)]
    pub common_name: Option<String>,
}

/// Which assets make up the RGB image of a scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RgbAssets {
    /// One asset that already holds the three visual bands.
    Visual(String),
    /// Three single-band assets, in red, green, blue order.
    Bands([String; 3]),
}

impl StacItem {
    /// EPSG code of the item, from `proj:epsg` or an `EPSG:` `proj:code`.
    pub fn epsg(&self) -> Option<u32> {
        self.properties
            .proj_epsg
            .or_else(|| self.properties.proj_code.as_deref().and_then(|code| code.strip_prefix("EPSG:")).and_then(|n| n.parse().ok()))
    }

    /// Picks the assets that form an RGB image.
    ///
    /// With `requested` keys (one visual asset, or three band assets in R, G, B order) those
    /// are used. Otherwise: an asset keyed or roled `visual`; then assets whose `eo:bands`
    /// common names are red, green and blue; then keys `red`/`green`/`blue`; then Sentinel-2
    /// style keys `B04`/`B03`/`B02`.
    ///
    /// # Errors
    /// A message saying which keys were asked for or looked for and which the item has.
    pub fn rgb_assets(&self, requested: Option<&[String]>) -> Result<RgbAssets, String> {
        let available = || self.assets.keys().cloned().collect::<Vec<_>>().join(", ");
        if let Some(keys) = requested {
            if let Some(missing) = keys.iter().find(|k| !self.assets.contains_key(*k)) {
                return Err(format!("asset `{missing}` was requested but the item has only: {}", available()));
            }
            return match keys {
                [one] => Ok(RgbAssets::Visual(one.clone())),
                [r, g, b] => Ok(RgbAssets::Bands([r.clone(), g.clone(), b.clone()])),
                _ => Err(format!("{} assets were requested; give one visual asset or three band assets (red, green, blue)", keys.len())),
            };
        }
        if self.assets.contains_key("visual") {
            return Ok(RgbAssets::Visual("visual".to_owned()));
        }
        if let Some((key, _)) = self.assets.iter().find(|(_, asset)| asset.roles.iter().any(|r| r == "visual")) {
            return Ok(RgbAssets::Visual(key.clone()));
        }
        let by_common_name = |wanted: &str| {
            self.assets.iter().find_map(|(key, asset)| {
                let bands = asset.eo_bands.as_ref()?;
                (bands.len() == 1 && bands[0].common_name.as_deref() == Some(wanted)).then(|| key.clone())
            })
        };
        if let (Some(r), Some(g), Some(b)) = (by_common_name("red"), by_common_name("green"), by_common_name("blue")) {
            return Ok(RgbAssets::Bands([r, g, b]));
        }
        for [r, g, b] in [["red", "green", "blue"], ["B04", "B03", "B02"]] {
            if [r, g, b].iter().all(|k| self.assets.contains_key(*k)) {
                return Ok(RgbAssets::Bands([r.to_owned(), g.to_owned(), b.to_owned()]));
            }
        }
        Err(format!(
            "no RGB assets found (looked for `visual`, eo:bands red/green/blue, red/green/blue, B04/B03/B02); the item has: {}",
            available()
        ))
    }
}
