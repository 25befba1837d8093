// The part of the org tree a credential may see, from GET /api/v1/org/nodes/{id}/subtree.

export const TIERS = ['city', 'county', 'township', 'village', 'worker'];

export class Org {
  constructor(tree) {
    this.nodes = new Map();
    this.root = tree.id;
    const walk = (n, parent) => {
      const node = {
        id: n.id,
        name: n.name,
        name_en: n.name_en,
        tier: n.tier,
        location: n.location || null,
        parent,
        children: [],
      };
      this.nodes.set(n.id, node);
      for (const c of n.children || []) node.children.push(walk(c, n.id).id);
      return node;
    };
    walk(tree, null);
  }

  static async load(hub, root) {
    const { tree } = await hub.api(`/api/v1/org/nodes/${encodeURIComponent(root)}/subtree?depth=4`);
    return new Org(tree);
  }

  get(id) {
    return this.nodes.get(id);
  }

  /// From the visible root down to `id`.
  path(id) {
    const out = [];
    for (let n = this.nodes.get(id); n; n = n.parent ? this.nodes.get(n.parent) : null) out.push(n);
    return out.reverse();
  }

  /// Whether `id` is `anc` or below it.
  within(id, anc) {
    for (let n = this.nodes.get(id); n; n = n.parent ? this.nodes.get(n.parent) : null) {
      if (n.id === anc) return true;
    }
    return false;
  }

  *subtree(id) {
    const stack = [id];
    while (stack.length) {
      const n = this.nodes.get(stack.pop());
      if (!n) continue;
      yield n;
      for (let i = n.children.length - 1; i >= 0; i--) stack.push(n.children[i]);
    }
  }
}
