// Progressive enhancement only: every page works without this file.
// Sort the rows of the current queue page by a column header (click or Enter).
"use strict";
(function () {
  function cellValue(row, index, kind) {
    var text = row.cells[index] ? row.cells[index].textContent.trim() : "";
    if (kind === "num") { var n = parseFloat(text.replace(/[^0-9.\-]/g, "")); return isNaN(n) ? 0 : n; }
    return text.toLowerCase();
  }
  function sortBy(table, th) {
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var kind = th.getAttribute("data-sort");
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, kind), y = cellValue(b, index, kind);
      return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  document.querySelectorAll("table.queue th[data-sort]").forEach(function (th) {
    th.tabIndex = 0;
    var table = th.closest("table");
    th.addEventListener("click", function () { sortBy(table, th); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, th); } });
  });
})();
