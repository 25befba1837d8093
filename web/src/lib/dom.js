// Small DOM helpers both pages use.

/// An element with properties and children (strings become text, never HTML).
export function el(tag, props = {}, ...kids) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...kids.filter((k) => k != null));
  return e;
}

/// A CSS custom property of the page (the palette lives in base.css).
export function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}
